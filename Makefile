# The README's commands. Each installs and starts what it needs.
.PHONY: dev test deploy-check bench soak services-stop

# The whole local stack on http://localhost:3000.
dev:
	scripts/bootstrap.sh redis postgres
	cargo run -p tollgate-cli --bin tollgate -- dev

# Every check and test, against private Redis and PostgreSQL.
test:
	scripts/test.sh

# Builds the project with Vercel's own builder, offline, and checks the output.
deploy-check:
	scripts/deploy-check.sh

# Stops the private dev instances if `make dev` was killed hard.
services-stop:
	cargo run --quiet -p tollgate-cli --bin tollgate -- services stop --dir .tollgate/dev

# Benchmarks against same-run baselines; rewrites BENCHMARKS.md.
bench:
	bench/run.sh

# The whole stack for 10 minutes under load with faults; its summary goes
# into BENCHMARKS.md. `bench/soak.sh 60` runs the one-minute variant.
soak:
	bench/soak.sh
