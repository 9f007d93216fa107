# map_gpa_range: one KVM_HC_MAP_GPA_RANGE hypercall, then report its result.
#
# Real mode, loaded at guest-physical 0x1000 and entered with %cs = 0, %ip = 0x1000.
# The host loads the registers exactly as the hypercall ABI wants them:
#   %eax  12 (KVM_HC_MAP_GPA_RANGE)
#   %ebx  guest-physical address of the first page
#   %ecx  number of 4 KiB pages
#   %edx  attributes: 1 << 4 (KVM_MAP_GPA_RANGE_ENCRYPTED) asks for private, 0 for
#         shared; bits 0-3 hint the page size
#
# KVM either answers by itself (a malformed request, or hypercall exits not enabled)
# or exits to the host with KVM_EXIT_HYPERCALL; in both cases the result lands in
# %eax (32 bits outside long mode), which goes out on port 0x12 as four bytes before
# the guest halts.

        .code16

        vmmcall
        outl    %eax, $0x12
        hlt
