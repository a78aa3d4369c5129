"""npspulse's functional core: pure, deterministic processing with no I/O, no clock reads and no asyncio.

Data flows: events -> profiles/segments -> windows -> spike detector -> alerts -> re-targeting triggers,
tied together by :class:`processors.engine.Engine`.
"""
