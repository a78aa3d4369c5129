"""npspulse's imperative shell: configuration loading, the embedded runner, the simulator and the CLI
(the Faust worker, Kafka clients and Redis stores build on the same processors)."""
