"""Hostile-input fuzzing of a running proxy: a seeded case generator, a raw HTTP client, a judge.

`routes` is the table of what to attack (add a row for a new route), `generators` makes the
cases from a seed, `wire` sends each one as exact bytes on its own connection, and `judge`
checks every answer and groups the failures into one readable table.
"""
