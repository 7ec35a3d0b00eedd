"""Compiled GraphQL: an operation is compiled once into a plan, and requests only run the plan."""
