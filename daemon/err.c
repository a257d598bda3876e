#include "err.h"

const char *idv_err_name(int err)
{
    switch (err) {
    case IDV_OK: return "IDV_OK";
#define IDV_ERR_NAME(name, msg)                                                                    \
    case IDV_E##name: return "IDV_E" #name;
        IDV_ERRNO_MAP(IDV_ERR_NAME)
#undef IDV_ERR_NAME
    default: return "IDV_EUNKNOWN";
    }
}

const char *idv_strerror(int err)
{
    switch (err) {
    case IDV_OK: return "success";
#define IDV_ERR_MSG(name, msg)                                                                     \
    case IDV_E##name: return msg;
        IDV_ERRNO_MAP(IDV_ERR_MSG)
#undef IDV_ERR_MSG
    default: return "unknown error";
    }
}
