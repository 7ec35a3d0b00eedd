"""Feature entitlements: what a user may use now, support's overrides, usage against limits."""
