"""How the RabbitMQ bus's messages get onto the AMQP link and off it."""
