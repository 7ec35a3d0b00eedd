// Runs graphql-http's GraphQL-over-HTTP audit against the URL given; prints the results as JSON.
// graphql-http is installed by the test into a folder outside the repository (NODE_PATH).
// The audit's queries use introspection (`__type`), which the gateway keeps for staff keys, so
// every request carries the Authorization header from AUDIT_AUTHORIZATION.
const { auditServer } = require('graphql-http');

const authorization = process.env.AUDIT_AUTHORIZATION;
const fetchFn = (url, init = {}) =>
  fetch(url, { ...init, headers: { ...(init.headers || {}), authorization } });

auditServer({ url: process.argv[2], fetchFn }).then((results) => {
  const summary = results.map((r) => ({ id: r.id, name: r.name, status: r.status, reason: r.reason }));
  process.stdout.write(JSON.stringify(summary));
});
