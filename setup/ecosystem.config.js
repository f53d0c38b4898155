// pm2 apps for bitmind-lite nodes.
//
//   cp .env.miner.example .env.miner      # then edit: netuid, network, wallet, port, device
//   pm2 start setup/ecosystem.config.js --only bitmind-miner
//   pm2 logs bitmind-miner     pm2 restart bitmind-miner     pm2 delete bitmind-miner
//
// Settings come from .env.miner in the repository root (the node reads it itself), overridden by environment
// variables (NEURON_DEVICE=cuda pm2 start ...). Several miners on one machine: give each its own name, port and
// hotkey, e.g. BITMIND_MINER_NAME=miner2 AXON_PORT=8102 WALLET_HOTKEY=h2 pm2 start setup/ecosystem.config.js.
// Each node is one entry made by `node()`: adding a node kind is one more line in `apps`.
const fs = require("fs");
const path = require("path");

const root = path.resolve(__dirname, "..");
const venvPython = path.join(root, ".venv", "bin", "python");
const python = process.env.BITMIND_PYTHON || (fs.existsSync(venvPython) ? venvPython : "python3");

// Restart policy: exit status 2 means bad settings, keys, weights or a port in use (the node logs which), which a
// restart cannot fix, so pm2 shows the app "stopped" (`pm2 logs` shows why; fix it, then `pm2 restart`). Other exits
// restart at once; a node that keeps dying within `min_uptime` gives up after `max_restarts` ("errored").
// No `restart_delay` / `exp_backoff_restart_delay`: with either set, pm2 (checked with 7.0.4, lib/God.js handleExit)
// marks an app that exited with a `stop_exit_codes` status "waiting restart" and never restarts it nor shows it
// stopped (tests/test_miner_lifecycle.py checks `pm2 jlist`). `kill_timeout` exceeds the node's own graceful
// shutdown (--axon.shutdown_timeout, 5 s), so in-flight requests finish before any SIGKILL.
// Logs: INFO goes to the out log, warnings and errors to the error log (`pm2 logs` shows both).
function node(name, script) {
  return {
    name,
    script: path.join(root, script),
    interpreter: python,
    cwd: root,
    autorestart: true,
    stop_exit_codes: [2],
    min_uptime: "30s",
    max_restarts: 10,
    kill_timeout: 15000,
    max_memory_restart: "8G",
    env: { PYTHONUNBUFFERED: "1" },
  };
}

module.exports = {
  apps: [
    node(process.env.BITMIND_MINER_NAME || "bitmind-miner", "neurons/miner.py"),
    // validator: cp .env.validator.example .env.validator, then pm2 start setup/ecosystem.config.js --only bitmind-validator
    // (on SIGTERM it finishes the challenge in flight, at most --neuron.timeout s, well inside kill_timeout)
    node(process.env.BITMIND_VALIDATOR_NAME || "bitmind-validator", "neurons/validator.py"),
  ],
};
