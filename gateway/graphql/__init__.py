"""GraphQL over HTTP: the /graphql route, its document cache, request parsing and error bodies."""
