"""The skip rule, decided from a sample's GLOBAL loss-token count so every rank of a group agrees."""


def too_few_loss_tokens(num_loss_tokens: int, min_loss_tokens: int) -> bool:
    return num_loss_tokens < max(1, min_loss_tokens)
