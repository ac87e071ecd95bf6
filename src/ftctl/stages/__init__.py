"""Backend-neutral stage code: the stage contract (contract.py) and what both backends' stages share
(shared.py). Each backend implements the nine stages under ftctl/backends/<name>/stages/."""
