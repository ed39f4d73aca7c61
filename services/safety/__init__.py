"""The streaming safety and PII filter.

Built so far: the validated recognizers (`recognizers`), the policy actions with the streaming
scrubber that never lets an entity split across chunks slip through (`scrubber`), gRPC framing over
chunked bodies (`frames`) and the response path on GenerateResponse frames (`response`). Not built
yet:
the ext_proc service in Envoy, the `switchyard.v1.Safety` API, per-tenant policy config and
metrics (issue 4); the mesh runs without the filter until then.
"""
