"""Stripe: stored events and their effects, subscriptions, payments, refunds, outgoing Checkout."""
