"""Tenants: what each may spend, how much of a saturated pool it gets, and what it may share.

`policy` (a tenant's quotas, fair-share weight, tier and cache group: config defaults plus live
changes from the admin API), `ledger` (quota token buckets and reservations in the router's
memory) and `redis_ledger` (the same in Redis, shared by router replicas), `admission` (reserve
at admission, settle from the engines' usage reports), `flow` (per-tenant queues and weighted
fair release while a pool is saturated; see `services.router.saturation`).
"""
