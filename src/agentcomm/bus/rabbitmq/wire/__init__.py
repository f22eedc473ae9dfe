"""How the RabbitMQ bus's messages get onto the AMQP link and off it, behind one seam
(`base.Wire`): the bus's own framing (`framed.py`, the default) or plain aio-pika (`plain.py`,
`RABBITMQ_FAST_PATH=0`)."""
