# cmake --install: headers, libraries and a package config for find_package(distmla).
include(CMakePackageConfigHelpers)
set(DISTMLA_CMAKE_DIR ${CMAKE_INSTALL_LIBDIR}/cmake/distmla)

set(_targets distmla)
if(TARGET distmla_dist)
  list(APPEND _targets distmla_dist)
endif()
install(TARGETS ${_targets} EXPORT distmlaTargets
        LIBRARY DESTINATION ${CMAKE_INSTALL_LIBDIR}
        ARCHIVE DESTINATION ${CMAKE_INSTALL_LIBDIR}
        RUNTIME DESTINATION ${CMAKE_INSTALL_BINDIR}
        INCLUDES DESTINATION ${CMAKE_INSTALL_INCLUDEDIR})
install(DIRECTORY ${PROJECT_SOURCE_DIR}/lib/include/ ${PROJECT_SOURCE_DIR}/kernels/include/
        DESTINATION ${CMAKE_INSTALL_INCLUDEDIR})
if(TARGET distmla_dist)
  install(DIRECTORY ${PROJECT_SOURCE_DIR}/distributed/include/ DESTINATION ${CMAKE_INSTALL_INCLUDEDIR})
  install(FILES ${PROJECT_SOURCE_DIR}/cmake/FindNCCL.cmake DESTINATION ${DISTMLA_CMAKE_DIR})
endif()
install(EXPORT distmlaTargets NAMESPACE distmla:: DESTINATION ${DISTMLA_CMAKE_DIR})


configure_package_config_file(${PROJECT_SOURCE_DIR}/cmake/distmlaConfig.cmake.in
  ${CMAKE_CURRENT_BINARY_DIR}/distmlaConfig.cmake INSTALL_DESTINATION ${DISTMLA_CMAKE_DIR})
write_basic_package_version_file(${CMAKE_CURRENT_BINARY_DIR}/distmlaConfigVersion.cmake
  COMPATIBILITY SameMinorVersion)
install(FILES ${CMAKE_CURRENT_BINARY_DIR}/distmlaConfig.cmake
              ${CMAKE_CURRENT_BINARY_DIR}/distmlaConfigVersion.cmake
        DESTINATION ${DISTMLA_CMAKE_DIR})
