# Every dependency comes from a Debian 12 package. When one is missing, stop with
# the name of the package to install rather than a CMake backtrace.
find_package(PkgConfig)
if(NOT PKG_CONFIG_FOUND)
  message(FATAL_ERROR "pkg-config not found: apt-get install pkg-config")
endif()

function(idv_require_pc target module package)
  pkg_check_modules(${target} QUIET IMPORTED_TARGET ${module})
  if(NOT ${target}_FOUND)
    message(FATAL_ERROR "${module} not found: apt-get install ${package}")
  endif()
  message(STATUS "${module} ${${target}_VERSION} (Debian package ${package})")
endfunction()

idv_require_pc(UV libuv libuv1-dev)
idv_require_pc(SSL "libssl>=3.0" libssl-dev)
idv_require_pc(CRYPTO "libcrypto>=3.0" libssl-dev)
idv_require_pc(PQ libpq libpq-dev)
idv_require_pc(CURL libcurl libcurl4-openssl-dev)
idv_require_pc(JANSSON jansson libjansson-dev)
idv_require_pc(SYSTEMD libsystemd libsystemd-dev)

set(LLHTTP_SRC_DIR /usr/share/llhttp CACHE PATH "llhttp C sources (Debian package node-llhttp)")
set(LLHTTP_INCLUDE_DIR /usr/share/include/llhttp CACHE PATH "llhttp header (Debian package node-llhttp)")
foreach(f api.c http.c llhttp.c)
  if(NOT EXISTS ${LLHTTP_SRC_DIR}/${f})
    message(FATAL_ERROR "${LLHTTP_SRC_DIR}/${f} not found: apt-get install node-llhttp")
  endif()
endforeach()
if(NOT EXISTS ${LLHTTP_INCLUDE_DIR}/llhttp.h)
  message(FATAL_ERROR "${LLHTTP_INCLUDE_DIR}/llhttp.h not found: apt-get install node-llhttp")
endif()

# llhttp's generated C is compiled as it is, in its strict variant, without our
# warning flags (it raises ~170 of them) and never with a lenient flag.
add_library(llhttp STATIC ${LLHTTP_SRC_DIR}/api.c ${LLHTTP_SRC_DIR}/http.c
                          ${LLHTTP_SRC_DIR}/llhttp.c)
target_compile_definitions(llhttp PUBLIC LLHTTP_STRICT_MODE=1)
target_compile_options(llhttp PRIVATE -w)
target_include_directories(llhttp SYSTEM PUBLIC ${LLHTTP_INCLUDE_DIR})
set_target_properties(llhttp PROPERTIES POSITION_INDEPENDENT_CODE ON)
