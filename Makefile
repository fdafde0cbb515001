# The README's commands. Each installs and starts what it needs.
.PHONY: dev test deploy-check bench services-stop

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
