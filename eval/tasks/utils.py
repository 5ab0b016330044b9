"""Helpers referenced by the task yamls (``!function utils.<name>``); same prompt logic as lm-eval's winogrande."""


def winogrande_text(doc):
    """Index of the correct context (lm-eval scores the shared continuation after each filled-in blank)."""
    return {"1": 0, "2": 1}[doc["answer"]]


def winogrande_target(doc):
    """The sentence after the blank: the continuation scored under both contexts."""
    cut = doc["sentence"].index("_") + 1
    return doc["sentence"][cut:].strip()


def winogrande_choice(doc):
    """The sentence up to the blank, completed by option 1 and option 2."""
    cut = doc["sentence"].index("_")
    return [doc["sentence"][:cut] + doc["option1"], doc["sentence"][:cut] + doc["option2"]]
