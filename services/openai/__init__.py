"""OpenAI's HTTP API (chat completions, completions, models; JSON and Server-Sent Events) on the
mesh's one data path: each HTTP turn becomes one `switchyard.v1.Inference/Generate` turn.

No process of its own: the translation happens where the mesh already rewrites turns.

- `request`: an OpenAI request body → a `GenerateRequest` and the `Wire` (how to answer:
  chat or completions, streamed or not, usage, id), validated with 400s naming the field. The
  router's ext_proc calls it (the first filter to read the body) and marks the turn with the
  `Wire` header; the turn then runs exactly as a gRPC turn: auth, quotas, routing, safety.
- `stream`: the scrubbed `GenerateResponse` events → OpenAI chunks (`data: {…}` SSE events and
  `data: [DONE]`) or one JSON object. The safety filter's ext_proc calls it (the last to
  rewrite the response), so no extra hop carries tokens.
- `errors`: gRPC statuses → OpenAI error objects with the matching HTTP status (and
  `Retry-After`), as ext_proc immediate responses.
- `models`: the `GET /v1/models` listing.
"""
