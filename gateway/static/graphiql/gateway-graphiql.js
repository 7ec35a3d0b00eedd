// The gateway's GraphiQL page: vendored assets only, no CDN. It opens on the support runbook's
// tabs with the key the browser signed in with already in the headers editor.
(function () {
  "use strict";
  const config = JSON.parse(document.getElementById("graphiql-config").textContent);
  // Tabs live in memory, not localStorage: the API key never lands on the support engineer's
  // disk, and every visit opens on the runbook's first query.
  const memory = new Map();
  const storage = {
    getItem: (key) => (memory.has(key) ? memory.get(key) : null),
    setItem: (key, value) => memory.set(key, String(value)),
    removeItem: (key) => memory.delete(key),
    clear: () => memory.clear(),
    get length() {
      return memory.size;
    },
  };
  const root = ReactDOM.createRoot(document.getElementById("graphiql"));
  root.render(
    React.createElement(GraphiQL, {
      fetcher: GraphiQL.createFetcher({ url: config.url }),
      defaultTabs: config.tabs,
      // GraphiQL fills the first tab's variables editor from this prop, not from defaultTabs.
      variables: config.tabs[0].variables,
      defaultHeaders: config.headers,
      defaultEditorToolsVisibility: "headers",
      isHeadersEditorEnabled: true,
      shouldPersistHeaders: false,
      storage: storage,
    }),
  );
})();
