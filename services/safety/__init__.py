"""The streaming safety and PII filter.

Built so far: the validated recognizers (`recognizers`) and the policy actions with the streaming
scrubber that never lets an entity split across chunks slip through (`scrubber`). Not built yet:
the ext_proc service in Envoy, the `switchyard.v1.Safety` API, per-tenant policy config and
metrics (issue 4); the mesh runs without the filter until then.
"""
