# shellcheck shell=bash
# Stand-in for CANN's /usr/local/Ascend/ascend-toolkit/set_env.sh (simulated fleet: no NPUs, no CANN).
# It sets the variables the real one sets, so launch scripts that `source` it behave the same; the
# directories it names hold no libraries. Safe under `set -u`.
export ASCEND_TOOLKIT_HOME=/usr/local/Ascend/ascend-toolkit/latest
export ASCEND_HOME_PATH="${ASCEND_TOOLKIT_HOME}"
export ASCEND_AICPU_PATH="${ASCEND_TOOLKIT_HOME}"
export ASCEND_OPP_PATH="${ASCEND_TOOLKIT_HOME}/opp"
export TOOLCHAIN_HOME="${ASCEND_TOOLKIT_HOME}/toolkit"
export LD_LIBRARY_PATH="${ASCEND_TOOLKIT_HOME}/lib64:${ASCEND_TOOLKIT_HOME}/lib64/plugin/opskernel${LD_LIBRARY_PATH:+:${LD_LIBRARY_PATH}}"
export PYTHONPATH="${ASCEND_TOOLKIT_HOME}/python/site-packages${PYTHONPATH:+:${PYTHONPATH}}"
export PATH="${ASCEND_TOOLKIT_HOME}/bin:${PATH}"
export ASCEND_SIM_STANDIN=1
