"""Notifier: FHIR Subscriptions (R4 with the Subscriptions Backport), fan-out of outbox events, deliveries."""
