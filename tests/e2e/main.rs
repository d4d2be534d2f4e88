//! The end-to-end tests: real `fake-node`, `engine-shim` and `fake-engine` processes, real sockets,
//! a real PostgreSQL (see `scripts/test`). One test binary with one module per story, so the
//! shared harness in `common/` is compiled and linked once; run one story with
//! `cargo test --test e2e MODULE::` (build the binaries first: `cargo build --workspace --bins`).

mod common;

mod chaos;
mod chaos_postgres;
mod check;
mod client_libraries;
mod failover_database_outage;
mod failover_frozen_holder;
mod failover_network_cut;
mod failover_password;
mod failover_paused_hand_over;
mod failover_primary_secondary;
mod failover_upgrade;
mod fake_engine_double;
mod fake_node;
mod fence_blocked_runtime;
mod handover_one_process;
mod handover_two_processes;
mod hostile_control;
mod hostile_lock;
mod hostile_logs;
mod log_text;
mod metrics;
mod pg_infra;
mod probes;
mod run_bad_release_values;
mod run_config_root;
mod run_exit_at_upgrade;
mod run_finality;
mod run_in_place_upgrade;
mod run_in_process;
mod run_lifecycle;
mod run_multi_version;
mod run_node_faults;
mod run_startup_checks;
mod run_upgrade;
mod step_down;
mod story_runner_package;
mod story_two_packages;
