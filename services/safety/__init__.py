"""The streaming safety and PII filter: Envoy's second ext_proc (prompt policy on the request,
scrub of the streamed response) and the `switchyard.v1.Safety` API.

- `recognizers`: validated PII/secret recognizers; `terms`: safety categories from term lists.
- `scrubber`: the policy actions and the streaming scrubber (equal to whole-text scrubbing for
  any chunking; no byte of a detected entity ever leaves).
- `response`: the response path on gRPC-framed GenerateResponse bodies; `prompt`: the prompt
  policy on GenerateRequests.
- `extproc` (in Envoy), `service` (Check, Filter), `config`, `metrics`, `server`.
"""
