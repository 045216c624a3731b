"""The concurrency budget: pure logic, no I/O, the clock injected.

`records` (what a job asks for and is granted), `costs` (what a pool costs in tasks),
`pressure` (the level), the allocation, and `ledger.BudgetLedger`, the thin owner of the
leases that the daemon calls on every request.
"""
