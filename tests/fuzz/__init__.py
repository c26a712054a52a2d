"""Hostile-input fuzzing of a running proxy: a seeded case generator, a raw HTTP client, a judge.

`routes` is the table of what to attack (add a row for a new route), `generators` makes the
concurrent phase's cases from a seed, one family per kind of route: `model_cases` (the model
routes of every API, their bodies described in `apis`), `api_cases` (Responses chains and
stored responses, Gemini's paths, `GET /v1/models/{id}`), `record_cases`, `admin_cases` (the
admin API and /metrics), `faces_cases` (/portal, /admin); `keys` attacks every position a key
may travel in; `phases` makes the sequential phases that need an earlier answer; `raw` makes
malformed HTTP; `wire` sends each case as exact bytes on its own connection, and `judge`
checks every answer and groups the failures into one readable table.
"""
