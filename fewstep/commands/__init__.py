"""One module per `fewstep` subcommand: each has `register(subparsers)` and a `run(args)` it sets as default."""
