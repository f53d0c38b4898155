"""The validator: sample miners -> challenge -> query -> reward -> scores -> weights, one file per step.

    query.py      aiohttp fan-out, btauth/1 signing per miner, answer validation       (MinerClient, Target, Answer)
    reward.py     windowed MCC + accuracy, invalid-share and Brier factors              (History, challenge_reward)
    scores.py     EMA per uid, in step with the metagraph                               (update_scores, sync_with_metagraph)
    weights.py    normalise and set weights every epoch through the chain layer         (WeightSetter)
    state.py      SQLite (WAL) state, one transaction per challenge                     (StateStore, ValidatorState)
    telemetry.py  JSONL challenge log, optional W&B, Prometheus /metrics
    loop.py       one challenge (`Validator.challenge`) and the loop (`Validator.run`)
    run.py        the entry point behind `neurons/validator.py` and `bitmind-lite validator`

Formulas: docs/incentive.md. Operations: docs/validator.md.
"""
