"""Kafka side of streamdetect: the consumer-group service, outputs, state checkpoints, embedded broker.

Modules: :mod:`~streamdetect.kafka.service` (the ``streamdetect run`` loop),
:mod:`~streamdetect.kafka.producer` (delivery-tracked output producer),
:mod:`~streamdetect.kafka.dlq` (dead-letter headers), :mod:`~streamdetect.kafka.checkpoint` (state
topic), :mod:`~streamdetect.kafka.admin` (topic creation), :mod:`~streamdetect.kafka.clients`
(librdkafka configurations) and :mod:`~streamdetect.kafka.broker` (embedded Tansu).
"""
