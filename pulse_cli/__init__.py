"""``pulse``: the command line (``pulse --help``): replay events into Kafka, read a profile or a person's
export through the admin API, validate a configuration, make API keys. docs/cli.md."""
