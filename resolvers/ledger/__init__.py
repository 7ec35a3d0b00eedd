"""The credit ledger: balances, grants, spends, holds, allowances, tier changes, history."""
