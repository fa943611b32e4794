"""graft.shared: what the API, the workers and the CLI share: config, tables, the job state machine, serializers,
queues, storage, file-name and archive rules, and the parameter table. It imports no other Graft room."""
