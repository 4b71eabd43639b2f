"""Journeys: declarative multi-step workflows per profile, with durable timers.

A journey is entered by a trigger event, runs its steps (``wait``,
``condition``, ``action``, ``exit``) for that profile, and is left early on a
goal event. State and timers live behind :class:`~tessera.journeys.state.JourneyState`
(SQLite in the data directory). See ``docs/activation.md``.
"""
