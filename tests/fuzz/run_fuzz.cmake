# Runs one libFuzzer target for SECONDS over a fresh copy of its seed corpus,
# with its dictionary. libFuzzer exits non-zero on a crash, a leak, a timeout
# of one input (10 s), more than 2 GiB of memory, or an invariant the target
# checks; the input that did it is kept in WORK/artifacts/.
# Run as: cmake -DFUZZER=... -DSEEDS=... -DDICT=... -DWORK=... -DSECONDS=... -P run_fuzz.cmake
file(REMOVE_RECURSE ${WORK})
file(MAKE_DIRECTORY ${WORK}/corpus ${WORK}/artifacts)
file(GLOB seeds ${SEEDS}/*)
file(COPY ${seeds} DESTINATION ${WORK}/corpus)
set(dict)
if(EXISTS ${DICT})
  set(dict -dict=${DICT})
endif()
execute_process(
  COMMAND ${FUZZER} -max_total_time=${SECONDS} -timeout=10 -rss_limit_mb=2048
          -print_final_stats=1 -artifact_prefix=${WORK}/artifacts/ ${dict} ${WORK}/corpus
  RESULT_VARIABLE rc)
if(NOT rc EQUAL 0)
  file(GLOB found ${WORK}/artifacts/*)
  message(FATAL_ERROR "${FUZZER} failed (exit ${rc}); reproduce with: ${FUZZER} ${found}")
endif()
