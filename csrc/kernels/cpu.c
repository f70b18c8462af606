/* Run-time ISA selection: once at import, from CPU features (never from the
 * vendor or family), overridable with GLASSBOX_ISA for tests. */
#include <stdlib.h>
#include <string.h>
#include <stdio.h>

#include "kernels.h"

static gb_isa current_isa = GB_ISA_SCALAR;
static int initialised = 0;
static char forced_error[160];

static const char *const isa_names[GB_ISA_COUNT] = {"scalar", "avx2", "avx512"};

const char *gb_isa_name(gb_isa isa) {
    return (isa >= 0 && isa < GB_ISA_COUNT) ? isa_names[isa] : "unknown";
}

int gb_isa_supported(gb_isa isa) {
    switch (isa) {
    case GB_ISA_SCALAR:
        return 1;
#if defined(__x86_64__) && defined(__GNUC__)
    case GB_ISA_AVX2:
        __builtin_cpu_init();
        return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
    case GB_ISA_AVX512:
        __builtin_cpu_init();
        return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx2") &&
               __builtin_cpu_supports("fma");
#endif
    default:
        return 0;
    }
}

static gb_isa best_isa(void) {
    for (int i = GB_ISA_COUNT - 1; i > 0; i--)
        if (gb_isa_supported((gb_isa)i)) return (gb_isa)i;
    return GB_ISA_SCALAR;
}

gb_isa gb_cpu_init(void) {
    if (initialised) return current_isa;
    initialised = 1;
    current_isa = best_isa();
    const char *env = getenv("GLASSBOX_ISA");
    if (env && *env) {
        int found = 0;
        for (int i = 0; i < GB_ISA_COUNT; i++) {
            if (strcmp(env, isa_names[i]) == 0) {
                found = 1;
                if (gb_isa_supported((gb_isa)i)) {
                    current_isa = (gb_isa)i;
                } else {
                    snprintf(forced_error, sizeof forced_error,
                             "GLASSBOX_ISA=%s is not supported by this CPU or build; using %s",
                             env, isa_names[current_isa]);
                }
            }
        }
        if (!found)
            snprintf(forced_error, sizeof forced_error,
                     "GLASSBOX_ISA=%s is not one of scalar, avx2, avx512; using %s", env,
                     isa_names[current_isa]);
    }
    return current_isa;
}

gb_isa gb_isa_current(void) { return current_isa; }

int gb_isa_set(gb_isa isa) {
    if (isa < 0 || isa >= GB_ISA_COUNT || !gb_isa_supported(isa)) return -1;
    current_isa = isa;
    initialised = 1;
    return 0;
}

const char *gb_isa_forced_error(void) { return forced_error[0] ? forced_error : NULL; }
