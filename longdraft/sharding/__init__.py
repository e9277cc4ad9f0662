"""The shard contract: layout formulas, headers, the writer's split and the reader's rebuild."""
