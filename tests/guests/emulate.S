# One operation that KVM carries out by emulating the instruction, chosen by rdi, then
# a report that the guest got past it. In-place memory with and without a KVM-side
# mapping runs it (tests/tests/memory_kvm_side_mapping.rs): KVM's instruction emulator
# reads guest memory through userspace_addr, so without that mapping these fail.
#
# Every run first reports 0x5eed0000 | rdi (port I/O, which KVM completes without
# emulating), and, once past its operation, 0xd0e0; then it spins until the host stops
# it. The operations:
#   0  nothing emulated
#   1  MMIO store: 8 bytes 0x0123456789abcdef to 0x10000000
#   2  MMIO load: 8 bytes from 0x10000008, reported low half then high half
#   3  string I/O: `rep outsb` of the 8 bytes "veil-str" (in this code) to port 0x14
#   4  CPUID 0x40000000: reports ebx ("KVMK")
#   5  HLT: reports the address of its `hlt` first; after the halt the host checks RIP
#      (the guest never gets past it)
#   6  string I/O from the page at rsi: writes "private!" there, then `rep outsb`s
#      those 8 bytes to port 0x14 (on a private page, KVM's emulator shows which side
#      it reads)

.intel_syntax noprefix
.code64
.text
.global _start
_start:
    mov eax, 0x5eed0000
    or eax, edi
    out 0x10, eax
    cmp edi, 1
    je mmio_store
    cmp edi, 2
    je mmio_load
    cmp edi, 3
    je string_out
    cmp edi, 4
    je cpuid_leaf
    cmp edi, 5
    je halt
    cmp edi, 6
    je string_from_rsi
    jmp done

mmio_store:
    mov rbx, 0x10000000
    mov rax, 0x0123456789abcdef
    mov [rbx], rax
    jmp done

mmio_load:
    mov rbx, 0x10000000
    mov rax, [rbx + 8]
    out 0x10, eax
    shr rax, 32
    out 0x10, eax
    jmp done

string_out:
    lea rsi, [rip + message]
    mov ecx, 8
    mov dx, 0x14
    rep outsb
    jmp done

cpuid_leaf:
    mov eax, 0x40000000
    xor ecx, ecx
    cpuid
    mov eax, ebx
    out 0x10, eax
    jmp done

halt:
    lea rax, [rip + halt_here]
    out 0x10, eax
halt_here:
    hlt
    jmp done

string_from_rsi:
    mov rax, 0x2165746176697270
    mov [rsi], rax
    mov ecx, 8
    mov dx, 0x14
    rep outsb

done:
    mov eax, 0xd0e0
    out 0x10, eax
spin:
    jmp spin

message:
    .ascii "veil-str"
