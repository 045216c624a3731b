"""The concurrency budget: pure logic, no I/O, the clock injected.

- `records`: what a job asks for and is granted, a lease's snapshot, the statistics;
- `costs`: the pool kinds and levels, what a pool costs in kernel tasks, the reserve;
- `claims`: what a lease claims, by lifetime (its `Footprint` per sample, its `Profile`
  in the plan), and the scope of a request;
- `books`: the usage of every limit, the CPUs and the memory for one set of pools;
- `demand`: the plan's running sums, and the water level when only the CPUs bind;
- `pressure`: the level, from the tightest limit and PSI;
- `allocation`: `allocate`, the max-min water-filling, pure;
- `users`: the users holding leases (their weights, seats and sums), and
  `hierarchy`: `allocate_users`, the budget shared per user first, then `allocate`
  within each user, with `topup` for what is left;
- `shortcuts`: `newcomer_share`, the newcomer's share in closed form where it has one;
- `ledger`: `BudgetLedger`, the thin owner of the leases, the books, the demand and the
  clock, that the daemon calls on every request.
"""
