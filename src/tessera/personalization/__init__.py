"""Personalization: computed traits, audiences with entry and exit events, next best action.

See ``docs/personalization.md``. :mod:`.model` is the configuration,
:mod:`.computed` the incremental aggregates, :mod:`.rules` the rule language,
:mod:`.engine` the domain logic over the store and :mod:`.state` ports,
:mod:`.service` the processor in ``tessera worker``, :mod:`.nba` the
decisions, :mod:`.api` the HTTP routes and :mod:`.cli` the commands.
"""
