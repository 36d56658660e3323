"""The carbon context: emissions of every flight (DESNZ method) and the offsets bought and retired."""
