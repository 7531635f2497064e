"""Fleet commands over MQTT: schemas, the dispatcher thread, and one handler per command."""
