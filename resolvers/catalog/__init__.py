"""The catalog: tiers, credit packs and entitlements from TOML, and the localized pricing on it."""
