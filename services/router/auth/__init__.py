"""Who is calling: API keys and JWTs resolved to one principal per turn, at the edge.

`principal` (who a caller is: tenant, tier, models, priority ceiling, quotas), `keys` (API keys
stored only as hashes, in a file every router replica reads), `jwt` (tokens from an identity
provider, checked against its JWKS), and `authenticator` (the one entry point the ext_proc and
the admin API use).
"""
