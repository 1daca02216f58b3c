"""The gateway, ``lbprovider serve`` (SPEC §11): the engine behind three HTTP APIs.

A thin wing over the same engine: :mod:`.forms` says what each API form provides,
:mod:`.chat`, :mod:`.messages` and :mod:`.responses` translate one form each, and the
server modules route a request through a cached
:class:`~lbprovider.provider.LoadBalancingProvider` and write its answer.
"""
