"""Background jobs and the results cache: specs (`spec`), the SQLite queue (`store`), the worker (`worker`),
one job's stages (`pipeline`) and the run folders (`runs`). See docs/jobs.md."""
