// Copyright 2026 The veil authors.
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! vCPU exit handling for KVM guests with private memory.
//!
//! This crate will decode `KVM_RUN` outcomes into typed, validated exits (memory faults,
//! MAP_GPA_RANGE conversion requests, I/O), dispatch them to handler traits, and run one
//! thread per vCPU. None of it is written yet: the crate exports nothing.
