"""Activation: subscriptions that deliver events to destinations, reliably.

A subscription selects events (:class:`~tessera.activation.model.Filter`),
shapes them (fat, notification, event, projection or template) and delivers
them to a destination (webhook, Python function, file). Each subscription is
its own consumer group ``sub:<name>`` of the topics ``events`` and
``derived``, so a destination that is down never holds back another one.
See ``docs/activation.md``.
"""
