"""The safety policy and the streaming safety and PII filter: Envoy's second ext_proc (scrub of
the streamed response), the prompt policy the router applies, and the `switchyard.v1.Safety` API.

- `recognizers`: validated PII/secret recognizers; `terms`: safety categories from term lists.
- `scrubber`: the policy actions and the streaming scrubber (equal to whole-text scrubbing for
  any chunking; no byte of a detected entity ever leaves).
- `response`: the response path on gRPC-framed GenerateResponse bodies; `prompt`: the prompt
  policy on GenerateRequests (applied by the router, before it routes).
- `extproc` (in Envoy), `service` (Check, Filter), `config`, `metrics`, `server`.
"""
