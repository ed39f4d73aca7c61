"""Tenants: what each may spend, how much of a saturated pool it gets, and what it may share.

`policy` (a tenant's quotas, fair-share weight, tier and cache group: config defaults plus live
changes from the admin API), `buckets` (token-bucket arithmetic), `ledger` (reservations against
quotas, in the router or in Redis), `admission` (reserve at admission, settle from the engine's
usage report), `flow` (per-tenant queues and weighted fair release when a pool is saturated).
"""
