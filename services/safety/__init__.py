"""The streaming safety and PII filter (Envoy ext_proc on requests and streamed responses).

Not built yet: the mesh runs without it until then (see README, "What exists today").
"""
