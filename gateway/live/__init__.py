"""Live updates: GraphQL subscriptions pushed as changes commit, in this process and others."""
